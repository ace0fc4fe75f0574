"""fedcity + Flower example app."""
