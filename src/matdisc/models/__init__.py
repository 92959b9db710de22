"""Neural networks: 3-D UNet, conditional DFC-VAE, CGCNN."""
