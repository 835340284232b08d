"""cvtool.config"""
