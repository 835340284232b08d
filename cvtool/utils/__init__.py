"""cvtool.utils"""
