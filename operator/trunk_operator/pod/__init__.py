"""The channel into an Asterisk pod, over exec: deliver a file set (reload or ARI push), verify
what Asterisk loaded, roll back, and observe. The in-pod programs are files in `scripts/`."""
