"""The web app's routes, one ``APIRouter`` per concern; each reaches the shared state through
``Depends(server)`` (:mod:`dermsearch.web.state`)."""
