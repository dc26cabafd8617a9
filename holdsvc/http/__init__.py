"""HTTP: translates requests into calls of the domain and results into JSON."""
