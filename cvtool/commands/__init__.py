"""cvtool.commands"""
