"""Build the bundled demo sample: 48 indexed + 2 query images from isic-uda1 (CC0), downscaled."""
import csv, shutil
from pathlib import Path
from PIL import Image, ImageOps
ROOT = Path(__file__).resolve().parents[1]
src = ROOT.parent / 'shared/data/isic-uda1'; dst = ROOT / 'examples/isic-sample'; q = ROOT / 'examples/queries'
rows = list(csv.DictReader(open(src/'labels.csv')))
nev = [r for r in rows if r['diagnosis']=='nevus']; mel = [r for r in rows if r['diagnosis']=='melanoma']
# every 12th nevus and every 8th melanoma: spread over the archive, deterministic
pick = nev[::12][:30] + mel[::8][:18]
queries = [nev[5], mel[3]]
assert not {r['image_id'] for r in queries} & {r['image_id'] for r in pick}
def save(r, folder):
    img = ImageOps.exif_transpose(Image.open(src/r['image_path'])).convert('RGB')
    img.thumbnail((256, 256), Image.Resampling.LANCZOS)
    img.save(folder/(r['image_id']+'.jpg'), quality=88)
cols = ['image_id','image_path','diagnosis','melanoma','age_approx','sex']
with open(dst/'labels.csv','w',newline='') as f:
    w = csv.writer(f); w.writerow(cols)
    for r in sorted(pick, key=lambda r: r['image_id']):
        save(r, dst/'images'); w.writerow([r['image_id'], f"images/{r['image_id']}.jpg", r['diagnosis'], r['melanoma'], r['age_approx'], r['sex']])
for r in queries:
    save(r, q); print('query', r['image_id'], r['diagnosis'])
shutil.copy(src/'ATTRIBUTION.txt', dst/'ATTRIBUTION.txt'); shutil.copy(src/'ATTRIBUTION.txt', q/'ATTRIBUTION.txt')
