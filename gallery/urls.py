from django.urls import path

from . import api, views

app_name = "gallery"

urlpatterns = [
    path("", views.index, name="index"),
    path("images/<int:pk>/", views.image_detail, name="image"),
    path("upload/", views.upload, name="upload"),
    path("search/", views.search, name="search"),
    path("search/by-image/", views.search_by_image, name="search-by-image"),
    path("api/search", api.search, name="api-search"),
    path("api/search/by-image", api.search_by_image, name="api-search-by-image"),
    path("api/images", api.images, name="api-images"),
    path("api/images/<int:pk>", api.image, name="api-image"),
]
