"""The search service: a web app (FastAPI, served by uvicorn) that answers typed and
image queries over an indexed archive with a JSON API and a search page.

    from rs_hashing.service import create_app
    app = create_app(model, index)   # `rs-hashing serve` runs it with uvicorn

The pieces, one per file: `app` (routes), `search_service` (queries to hits),
`inference_worker` (the encoder thread), `item_images` (thumbnails, quicklooks),
`archive_geography` and `search_filter` (bbox and time filters), `uploaded_image`
(upload checks), `service_limits`, `request_error`, `api_models` (the JSON schema) and
`static/` (the page's HTML, script and style, served by the app itself).
"""

from rs_hashing.service.app import create_app
from rs_hashing.service.service_limits import ServiceLimits

__all__ = ["create_app", "ServiceLimits"]
