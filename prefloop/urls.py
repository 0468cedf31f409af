from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("labeling.urls")),
    path("", include("training.urls")),
    path("", include("experiments.urls")),
    path("", include("api.urls")),
    path("", include("webhooks.urls")),
]
