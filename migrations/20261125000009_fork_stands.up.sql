-- A stand built from a fork's pull request (projects with forks = "allow") gets no secrets and no
-- logins, and never shares its row with the repository's own branch of the same name.
alter table stands add column fork boolean not null default false;
