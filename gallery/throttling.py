"""Rate limits per client, one mechanism for the API and the pages: Django REST framework's throttles.

A client is the logged-in user (session or API token alike), else the address the request came
from (X-Forwarded-For is trusted for IMAGESEARCH_PROXY_COUNT proxies, REST_FRAMEWORK
NUM_PROXIES). The counters live in Django's cache (CACHE_URL: Redis when several processes
serve). Rates are settings.IMAGESEARCH_RATE_LIMITS, per scope, e.g. "10/min".
"""
from functools import wraps

from django.conf import settings
from django.http import HttpResponse
from django.template.loader import render_to_string
from rest_framework.throttling import SimpleRateThrottle


class ClientRateThrottle(SimpleRateThrottle):
    """One scope's rate for one client; a scope without a rate is not limited."""

    def __init__(self, scope: str):
        self.scope = scope
        super().__init__()

    def get_rate(self):
        return settings.IMAGESEARCH_RATE_LIMITS.get(self.scope)

    def get_cache_key(self, request, view):
        user = getattr(request, "user", None)
        ident = f"user-{user.pk}" if user is not None and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


def rate_limited(scope: str, methods=("GET", "POST")):
    """Limit a page view (for `methods`) like the API: over the rate it answers 429 with Retry-After."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method in methods:
                throttle = ClientRateThrottle(scope)
                if not throttle.allow_request(request, None):
                    wait = max(1, round(throttle.wait() or 1))
                    body = render_to_string("429.html", {"wait": wait}, request=request)
                    response = HttpResponse(body, status=429)
                    response["Retry-After"] = str(wait)
                    return response
            return view(request, *args, **kwargs)

        return wrapper

    return decorate
