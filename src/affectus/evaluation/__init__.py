"""affectus.evaluation"""
