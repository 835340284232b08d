"""cvtool.export"""
