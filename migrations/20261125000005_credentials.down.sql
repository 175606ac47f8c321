drop table credentials;
