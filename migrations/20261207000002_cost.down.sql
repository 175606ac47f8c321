alter table stands drop column storage_bytes;
drop table stand_usage;
