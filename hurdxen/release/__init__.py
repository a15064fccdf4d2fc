"""The release bundle: what goes in, provenance, signing, domain configs, publishing, verifying, reproducing."""
