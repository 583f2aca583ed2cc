"""`ugpnet evaluate`: metrics of a model beside the classical baselines, and the HTML report."""
