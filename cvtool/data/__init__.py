"""cvtool.data"""
