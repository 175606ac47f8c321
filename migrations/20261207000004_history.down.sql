drop table stand_counts;
