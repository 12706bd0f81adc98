"""affectus.inference"""
