"""Looking at results: metrics over videos, paired comparisons, token drift, trace plots, the HTML report, the step diagnostic."""
