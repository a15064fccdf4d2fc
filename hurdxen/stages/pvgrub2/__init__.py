"""pv-grub2 images: what an image is, its grub.cfg, the GRUB tree and memdisk, the image."""
