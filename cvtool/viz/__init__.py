"""cvtool.viz"""
