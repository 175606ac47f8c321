drop index stands_probe_due;
alter table stands drop column next_probe_at;
alter table stands drop column health_diagnostics;
alter table stands drop column health_reason;
alter table stands drop column health_since;
alter table stands drop column health;
