"""Template context shared by every page."""
from captioning.services import captioner_loading


def captioning_status(request):
    """Whether this process is still loading the captioning model (captions of new uploads wait for it)."""
    return {"captioner_loading": captioner_loading()}
