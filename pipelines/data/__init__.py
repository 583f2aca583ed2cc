"""`ugpnet data prepare`: training and evaluation photos from packages, with their licences."""
