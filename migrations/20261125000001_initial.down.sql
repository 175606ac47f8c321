drop table if exists audit;
drop table if exists outbox;
drop table if exists deliveries;
drop table if exists steps;
drop table if exists runs;
drop table if exists stands;
