"""cvtool.metrics"""
