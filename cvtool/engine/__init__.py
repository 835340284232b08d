"""cvtool.engine"""
