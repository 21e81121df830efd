"""An optional melanoma head that reads the patient's age, sex and lesion site beside the image.

The ensemble's own head gives P(melanoma) from the image alone. Dermatologists weigh who the patient
is and where the lesion sits too (melanoma is rarer in the young, sites differ between sexes), and
many archives record it. :class:`MetadataHead` is a logistic model over

    x = [logit of the ensemble head's P(melanoma),
         (age - mean) / sd, age missing,
         male, female,
         one-hot of the site in SITES]

so that a row without metadata is scored from the image alone: a missing age, sex or site adds
nothing beyond its fitted "missing" term, and no query ever needs metadata. Metadata is read from a
row's stored columns whatever the archive calls them (:func:`read_metadata`: HAM10000's ``age``,
``sex``, ``localization``; the ISIC Archive's ``age_approx``, ``sex``, ``anatom_site_general``...).

The head is fitted for one model (``model_fingerprint``: the index's) by ``dermsearch
fit-metadata-head`` and written as JSON; its own :attr:`~MetadataHead.fingerprint` (a hash of
everything that decides its scores) is what an evaluation report records.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import write_json

__all__ = ["MetadataHead", "read_metadata", "design_matrix", "SITES", "COLUMNS", "FORMAT"]

FORMAT = "dermsearch-metadata-head/1"

# Coarse sites, ISIC's anatom_site_general where it has one: every archive's spelling maps onto these.
SITES = ("head/neck", "upper extremity", "lower extremity", "torso", "palms/soles", "oral/genital")
_SITE_NAMES = {
    "head/neck": "head/neck", "head": "head/neck", "neck": "head/neck", "face": "head/neck", "scalp": "head/neck",
    "ear": "head/neck",
    "upper extremity": "upper extremity", "hand": "upper extremity", "arm": "upper extremity",
    "lower extremity": "lower extremity", "foot": "lower extremity", "leg": "lower extremity",
    "torso": "torso", "trunk": "torso", "anterior torso": "torso", "posterior torso": "torso",
    "lateral torso": "torso", "chest": "torso", "abdomen": "torso", "back": "torso",
    "palms/soles": "palms/soles", "acral": "palms/soles",
    "oral/genital": "oral/genital", "genital": "oral/genital",
}
_AGE_COLUMNS = ("age", "age_approx")
_SEX_COLUMNS = ("sex",)
_SITE_COLUMNS = ("anatom_site_general", "anatom_site_general_challenge", "localization", "site", "anatom_site")
COLUMNS = ("image_logit", "age", "age_missing", "male", "female") + tuple(f"site={s}" for s in SITES)


def read_metadata(meta: Mapping | None) -> tuple[float | None, str | None, str | None]:
    """(age in years, "male"/"female", one of SITES) from a row's stored columns; None for each
    that the row lacks or holds in a form not understood (never an error)."""
    meta = meta or {}

    def first(columns, read):
        """The first column whose value ``read`` understands (an unreadable one does not hide the next)."""
        for c in columns:
            v = meta.get(c)
            value = read(str(v).strip()) if v is not None else None
            if value is not None:
                return value
        return None

    def age_of(text):
        try:
            value = float(text)
        except ValueError:
            return None
        return value if math.isfinite(value) and 0 <= value <= 120 else None

    age = first(_AGE_COLUMNS, age_of)
    sex = first(_SEX_COLUMNS, lambda t: {"male": "male", "m": "male", "female": "female", "f": "female"}.get(t.lower()))
    site = first(_SITE_COLUMNS, lambda t: _SITE_NAMES.get(t.lower().replace("_", " ")))
    return age, sex, site


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def design_matrix(p_image: Sequence[float], metas: Sequence[Mapping | None], age_mean: float,
                  age_std: float) -> np.ndarray:
    """[N, len(COLUMNS)] inputs of the head (module doc) from the image head's P(melanoma) and each
    row's stored columns."""
    p_image = np.asarray(p_image, dtype=np.float64)
    if len(p_image) != len(metas):
        raise ValueError(f"{len(p_image)} probabilities for {len(metas)} rows of metadata")
    x = np.zeros((len(p_image), len(COLUMNS)), dtype=np.float64)
    x[:, 0] = _logit(p_image)
    for i, meta in enumerate(metas):
        age, sex, site = read_metadata(meta)
        if age is None:
            x[i, 2] = 1.0
        else:
            x[i, 1] = (age - age_mean) / age_std
        if sex is not None:
            x[i, 3 if sex == "male" else 4] = 1.0
        if site is not None:
            x[i, 5 + SITES.index(site)] = 1.0
    return x


@dataclass(frozen=True)
class MetadataHead:
    """A fitted head (see the module doc). ``coef`` follows :data:`COLUMNS`."""

    model_fingerprint: str
    coef: tuple[float, ...]
    intercept: float
    age_mean: float
    age_std: float
    C: float
    fitted: dict          # rows, melanoma count and the rule it was chosen by: for the record only

    def __post_init__(self) -> None:
        if len(self.coef) != len(COLUMNS):
            raise ConfigError(f"a metadata head has {len(COLUMNS)} coefficients ({', '.join(COLUMNS)}), "
                              f"not {len(self.coef)}")
        if not (math.isfinite(self.age_std) and self.age_std > 0):
            raise ConfigError(f"metadata head: age_std must be positive, not {self.age_std}")

    @property
    def fingerprint(self) -> str:
        """A hash of what decides the scores (coefficients, intercept, age scaling, sites, model)."""
        decisive = {"model": self.model_fingerprint, "coef": [round(c, 12) for c in self.coef],
                    "intercept": round(self.intercept, 12), "age": [round(self.age_mean, 12), round(self.age_std, 12)],
                    "columns": list(COLUMNS)}
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]

    def probability(self, p_image: Sequence[float], metas: Sequence[Mapping | None]) -> np.ndarray:
        """P(melanoma) for each row from the image head's probability and the row's metadata
        (missing metadata: scored without it)."""
        x = design_matrix(p_image, metas, self.age_mean, self.age_std)
        z = x @ np.asarray(self.coef, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def check_model(self, fingerprint: str, where: str) -> None:
        if fingerprint != self.model_fingerprint:
            raise ConfigError(f"{where}: the metadata head was fitted for model {self.model_fingerprint}, "
                              f"not this index's {fingerprint}; fit one for it with dermsearch fit-metadata-head")

    def save(self, path: str | Path) -> None:
        write_json(Path(path), {"format": FORMAT, "columns": list(COLUMNS), "sites": list(SITES),
                                "fingerprint": self.fingerprint, **asdict(self)}, indent=2)

    @classmethod
    def load(cls, path: str | Path) -> MetadataHead:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not a readable metadata head ({type(e).__name__}: {e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConfigError(f"{path}: not a metadata head file (format {FORMAT!r} expected)")
        if tuple(d.get("columns", ())) != COLUMNS or tuple(d.get("sites", ())) != SITES:
            raise ConfigError(f"{path}: a metadata head with other inputs than this release's ({', '.join(COLUMNS)})")
        try:
            head = cls(str(d["model_fingerprint"]), tuple(float(c) for c in d["coef"]), float(d["intercept"]),
                       float(d["age_mean"]), float(d["age_std"]), float(d["C"]), dict(d.get("fitted") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}: incomplete metadata head ({type(e).__name__}: {e})") from None
        if d.get("fingerprint") not in (None, head.fingerprint):
            raise ConfigError(f"{path}: the metadata head's numbers do not match its recorded fingerprint "
                              "(edited by hand?); refit it")
        return head
