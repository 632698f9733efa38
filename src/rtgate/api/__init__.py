"""HTTP routes and the application factory."""
