DROP TABLE segment_opt_outs;
