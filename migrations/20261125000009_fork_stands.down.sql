alter table stands drop column fork;
