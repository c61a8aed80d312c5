"""The study: experiments over every route and testbed, their metrics, and the report."""
