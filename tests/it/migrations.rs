//! The migrations themselves: they apply, reverse completely, and apply again.

use sqlx::PgPool;

async fn tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "select table_name::text from information_schema.tables
         where table_schema = 'public' and table_name <> '_sqlx_migrations' order by 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn migrations_apply_reverse_and_apply_again(pool: PgPool) {
    let m = &draftd::store::MIGRATOR;
    assert!(
        m.iter().all(|mig| m.iter().any(|o| o.version == mig.version && o.migration_type != mig.migration_type)),
        "every migration has a down script"
    );
    assert!(!draftd::store::migrations_applied(&pool).await.unwrap());
    m.run(&pool).await.unwrap();
    assert!(draftd::store::migrations_applied(&pool).await.unwrap());
    let expected = [
        "access_flows",
        "audit",
        "credentials",
        "deliveries",
        "fork_approvals",
        "instance",
        "orphans",
        "outbox",
        "runs",
        "stand_counts",
        "stand_usage",
        "stands",
        "steps",
        "sweeps",
    ];
    assert_eq!(tables(&pool).await, expected);
    m.undo(&pool, 0).await.unwrap();
    assert!(tables(&pool).await.is_empty());
    m.run(&pool).await.unwrap();
    assert_eq!(tables(&pool).await, expected);
}

/// A NOT NULL column added to a table that already has rows fails on a live database unless it has a default.
fn adds_not_null_without_default(sql: &str) -> Vec<String> {
    let lower = sql.to_lowercase();
    lower
        .split(';')
        .flat_map(|stmt| stmt.split("add column").skip(1).map(str::to_owned).collect::<Vec<_>>())
        .map(|col| col.split(',').next().unwrap_or_default().trim().to_owned())
        .filter(|col| col.contains("not null") && !col.contains("default"))
        .collect()
}

#[test]
fn added_not_null_columns_carry_defaults() {
    assert_eq!(adds_not_null_without_default("alter table runs add column x int not null;"), ["x int not null"]);
    assert!(adds_not_null_without_default("alter table runs add column x int not null default 0;").is_empty());
    for m in draftd::store::MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()) {
        let bad = adds_not_null_without_default(&m.sql);
        assert!(bad.is_empty(), "migration {} {}: {bad:?}", m.version, m.description);
    }
}
