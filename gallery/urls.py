from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from . import api, views

app_name = "gallery"

urlpatterns = [
    path("", views.index, name="index"),
    path("images/<int:pk>/", views.image_detail, name="image"),
    path("upload/", views.upload, name="upload"),
    path("search/", views.search, name="search"),
    path("search/by-image/", views.search_by_image, name="search-by-image"),
    path("account/tokens/", views.api_tokens, name="api-tokens"),
    path("account/tokens/<str:token_key>/revoke", views.revoke_api_token, name="api-token-revoke"),
    path("api/search", api.SearchView.as_view(), name="api-search"),
    path("api/search/by-image", api.SearchByImageView.as_view(), name="api-search-by-image"),
    path("api/images", api.ImagesView.as_view(), name="api-images"),
    path("api/images/<int:pk>", api.ImageView.as_view(), name="api-image"),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    re_path(r"^api/(?P<path>.*)$", api.unknown, name="api-unknown"),
]
