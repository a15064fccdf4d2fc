"""The stage contract and what runs it: specs, manifests, the context, executors, images, recipes."""
