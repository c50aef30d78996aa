"""Evaluation formats the shapes generator writes besides POPE / MME / MMStar / open, one module per benchmark;
`base.FORMATS` finds them by importing this package's modules."""
