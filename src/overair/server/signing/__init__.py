"""Code signing: the certificate store, signing profiles and signing jobs."""
