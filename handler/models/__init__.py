"""Model files: `models.txt` (which files each MODEL_TYPE needs) and the downloader that installs
them at build time or at boot.
"""
