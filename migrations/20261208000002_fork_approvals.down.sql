drop table fork_approvals;
alter table stands drop column awaiting_approval;
