//! The SQL both backends speak: a connection ([`Conn`]) that runs a
//! statement with bound [`Value`]s and hands each result row to a callback
//! as a [`Row`], implemented for SQLite (`rusqlite::Connection`) and for
//! PostgreSQL (`crate::pg`). Every query of the store is written once,
//! against `&dyn Conn`, in the subset of SQL the two share; where they
//! differ (the ledger's index assignment, say) the code asks
//! [`Conn::dialect`].
//!
//! Statements are written with SQLite's numbered placeholders (`?1`, `?2`,
//! ...); the PostgreSQL connection rewrites them to `$1`, `$2`, ... once,
//! when it prepares and caches the statement. Integers are 64-bit on both
//! sides (`INTEGER` in SQLite, `BIGINT` in PostgreSQL), byte strings are
//! `BLOB`/`BYTEA`, text is `TEXT`.

use crate::StoreError;

/// A bound parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// Which SQL a connection speaks, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One result row. Columns are read by position; a value of another type
/// than asked for is [`StoreError::Corrupt`].
pub trait Row {
    /// An integer column, or `None` for NULL.
    fn opt_int(&self, idx: usize) -> Result<Option<i64>, StoreError>;
    /// A text column, or `None` for NULL.
    fn opt_text(&self, idx: usize) -> Result<Option<&str>, StoreError>;
    /// A byte-string column, or `None` for NULL.
    fn opt_bytes(&self, idx: usize) -> Result<Option<&[u8]>, StoreError>;
}

/// A connection, inside whatever transaction its caller runs.
pub trait Conn {
    fn dialect(&self) -> Dialect;

    /// Runs a statement; the number of rows it changed.
    fn execute(&self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError>;

    /// Runs a query, calling `each` with every row in order until it
    /// returns false.
    fn query_each(
        &self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError>;

    /// The next ledger index, where the connection assigns it (PostgreSQL's
    /// writer: see `crate::pg`); `None` where the database does (SQLite).
    fn next_ledger_index(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Inserts the ledger entry row at an index from
    /// [`Conn::next_ledger_index`]. PostgreSQL's writer holds such rows back
    /// and inserts many with one statement, before its next statement of
    /// any kind, so the transaction reads them like any other row.
    fn insert_ledger_entry(&self, row: LedgerRow<'_>) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO ledger_entries (idx, bytes, leaf_hash, parties, recorded_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            &[
                Value::Int(row.index),
                Value::Blob(row.bytes),
                Value::Blob(row.leaf_hash),
                Value::Text(row.parties),
                Value::Int(row.recorded_at_ms),
            ],
        )
        .map(drop)
    }
}

/// A `ledger_entries` row.
#[derive(Debug, Clone, Copy)]
pub struct LedgerRow<'a> {
    pub index: i64,
    pub bytes: &'a [u8],
    pub leaf_hash: &'a [u8; 32],
    pub parties: &'a str,
    pub recorded_at_ms: i64,
}

/// Conveniences over [`Conn`] and [`Row`].
pub trait ConnExt: Conn {
    /// The first row's `f`, if there is a row.
    fn query_opt<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnOnce(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut f = Some(f);
        let mut out = None;
        self.query_each(sql, params, &mut |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(false)
        })?;
        Ok(out)
    }

    /// `f` of every row, in order.
    fn query_vec<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        mut f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.query_each(sql, params, &mut |r| {
            out.push(f(r)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The integer in the first column of the first row (a `COUNT(*)`, say).
    fn query_int(&self, sql: &str, params: &[Value<'_>]) -> Result<i64, StoreError> {
        self.query_opt(sql, params, |r| r.int(0))?
            .ok_or_else(|| StoreError::Corrupt(format!("no row from {sql:?}")))
    }
}

impl<C: Conn + ?Sized> ConnExt for C {}

/// Conveniences over [`Row`].
pub trait RowExt: Row {
    fn int(&self, idx: usize) -> Result<i64, StoreError> {
        self.opt_int(idx)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {idx} is NULL")))
    }

    fn text(&self, idx: usize) -> Result<&str, StoreError> {
        self.opt_text(idx)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {idx} is NULL")))
    }

    fn string(&self, idx: usize) -> Result<String, StoreError> {
        self.text(idx).map(str::to_owned)
    }

    fn bytes(&self, idx: usize) -> Result<&[u8], StoreError> {
        self.opt_bytes(idx)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {idx} is NULL")))
    }

    /// A non-negative integer.
    fn uint(&self, idx: usize) -> Result<u64, StoreError> {
        let v = self.int(idx)?;
        u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {idx} is negative: {v}")))
    }

    /// An integer stored as 0 or 1.
    fn flag(&self, idx: usize) -> Result<bool, StoreError> {
        match self.int(idx)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(StoreError::Corrupt(format!(
                "column {idx} is {v}, want 0 or 1"
            ))),
        }
    }

    /// A 32-bit integer column.
    fn int32<T: TryFrom<i64>>(&self, idx: usize) -> Result<T, StoreError> {
        let v = self.int(idx)?;
        T::try_from(v)
            .map_err(|_| StoreError::Corrupt(format!("column {idx} is out of range: {v}")))
    }
}

impl<R: Row + ?Sized> RowExt for R {}

/// Column `idx` of `r`: a blob of exactly `N` bytes.
pub fn blob<const N: usize>(r: &dyn Row, idx: usize, what: &str) -> Result<[u8; N], StoreError> {
    opt_blob(r, idx, what)?.ok_or_else(|| StoreError::Corrupt(format!("{what} is NULL")))
}

/// [`blob`], or `None` for NULL.
pub fn opt_blob<const N: usize>(
    r: &dyn Row,
    idx: usize,
    what: &str,
) -> Result<Option<[u8; N]>, StoreError> {
    r.opt_bytes(idx)
        .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?
        .map(|b| exactly(b, what))
        .transpose()
}

/// `b` as an array of exactly `N` bytes.
pub fn exactly<const N: usize>(b: &[u8], what: &str) -> Result<[u8; N], StoreError> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} has {} bytes, want {N}", b.len())))
}

/// An index or count as the signed 64-bit integer both databases store.
pub fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} does not fit a 64-bit integer")))
}

// === impl Value ===

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<i32> for Value<'_> {
    fn from(v: i32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<u8> for Value<'_> {
    fn from(v: u8) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Blob(v)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Value<'a> {
    fn from(v: &'a [u8; N]) -> Self {
        Value::Blob(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Value<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// `[Value]` from a list of expressions, each converted with `Into`.
#[macro_export]
macro_rules! values {
    ($($v:expr),* $(,)?) => {
        &[$($crate::sql::Value::from($v)),*]
    };
}

// === SQLite ===

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Row for rusqlite::Row<'_> {
    fn opt_int(&self, idx: usize) -> Result<Option<i64>, StoreError> {
        use rusqlite::types::ValueRef;
        match self.get_ref(idx)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(i) => Ok(Some(i)),
            v => Err(StoreError::Corrupt(format!(
                "column {idx} is {:?}, want an integer",
                v.data_type()
            ))),
        }
    }

    fn opt_text(&self, idx: usize) -> Result<Option<&str>, StoreError> {
        self.get_ref(idx)?
            .as_str_or_null()
            .map_err(|e| StoreError::Corrupt(format!("column {idx}: {e}")))
    }

    fn opt_bytes(&self, idx: usize) -> Result<Option<&[u8]>, StoreError> {
        self.get_ref(idx)?
            .as_blob_or_null()
            .map_err(|e| StoreError::Corrupt(format!("column {idx}: {e}")))
    }
}

impl Conn for rusqlite::Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        let n = self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params.iter()))?;
        Ok(n as u64)
    }

    fn query_each(
        &self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
        while let Some(r) = rows.next()? {
            if !each(r)? {
                break;
            }
        }
        Ok(())
    }
}
