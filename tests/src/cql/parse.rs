//! A parser for the CQL subset the test server runs.

use super::types::CqlType;

/// A literal value in a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `'text'`
    Str(String),
    /// A number as written (`42`, `-1.5e3`).
    Number(String),
    /// `true` / `false`
    Bool(bool),
    /// `null`
    Null,
    /// `0xcafe`
    Hex(Vec<u8>),
    /// A UUID written without quotes.
    Uuid([u8; 16]),
    /// `[a, b]` or `{a, b}`
    Collection(Vec<Literal>),
    /// `{k: v, ...}`
    Map(Vec<(Literal, Literal)>),
}

/// A value: a literal or a bind marker (numbered in order of appearance).
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// A literal.
    Literal(Literal),
    /// The n-th `?` of the statement.
    Marker(usize),
}

/// `USING TTL .. AND TIMESTAMP ..`
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Using {
    /// Seconds to live.
    pub ttl: Option<Term>,
    /// Write timestamp (µs by convention).
    pub timestamp: Option<Term>,
}

/// The left side of a WHERE condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A column.
    Column(String),
    /// `token(a, b)`
    Token(Vec<String>),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `IN`
    In,
}

/// One `AND`-ed condition of a WHERE clause.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// What is compared.
    pub target: Target,
    /// How.
    pub op: CmpOp,
    /// With what: one term, or the list of an `IN (..)`.
    pub values: Vec<Term>,
}

/// A selected expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// A column.
    Column(String),
    /// `token(a, b)`
    Token(Vec<String>),
    /// `writetime(c)`
    WriteTime(String),
    /// `ttl(c)`
    Ttl(String),
    /// `count(*)`
    Count,
}

/// `keyspace.table` (keyspace optional).
#[derive(Debug, Clone, PartialEq)]
pub struct TableName {
    /// The keyspace, when written.
    pub keyspace: Option<String>,
    /// The table.
    pub table: String,
}

/// A parsed statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE KEYSPACE`
    CreateKeyspace {
        /// Name.
        name: String,
        /// `IF NOT EXISTS`
        if_not_exists: bool,
        /// The replication map.
        replication: Vec<(String, String)>,
    },
    /// `CREATE TABLE`
    CreateTable {
        /// Name.
        name: TableName,
        /// `IF NOT EXISTS`
        if_not_exists: bool,
        /// Columns in declaration order.
        columns: Vec<(String, CqlType)>,
        /// Partition key columns.
        partition_key: Vec<String>,
        /// Clustering columns.
        clustering: Vec<String>,
    },
    /// `DROP TABLE` / `DROP KEYSPACE` / `TRUNCATE`
    Drop {
        /// `Some(table)` for tables, `None` with `keyspace` for keyspaces.
        table: Option<TableName>,
        /// The keyspace of `DROP KEYSPACE`.
        keyspace: Option<String>,
        /// `IF EXISTS`
        if_exists: bool,
        /// `TRUNCATE`: keep the table, remove its rows.
        truncate: bool,
    },
    /// `USE ks`
    Use(String),
    /// `INSERT INTO`
    Insert {
        /// Table.
        table: TableName,
        /// Columns.
        columns: Vec<String>,
        /// Values, one per column.
        values: Vec<Term>,
        /// TTL and timestamp.
        using: Using,
    },
    /// `UPDATE`
    Update {
        /// Table.
        table: TableName,
        /// TTL and timestamp.
        using: Using,
        /// `SET c = v, ...`
        set: Vec<(String, Term)>,
        /// The primary key.
        conditions: Vec<Condition>,
    },
    /// `DELETE FROM`
    Delete {
        /// Table.
        table: TableName,
        /// Timestamp.
        using: Using,
        /// The partition or row.
        conditions: Vec<Condition>,
    },
    /// `SELECT`
    Select {
        /// Table.
        table: TableName,
        /// `None` for `*`.
        selectors: Option<Vec<Selector>>,
        /// WHERE.
        conditions: Vec<Condition>,
        /// LIMIT.
        limit: Option<Term>,
    },
}

impl Statement {
    /// The number of bind markers.
    pub fn markers(&self) -> usize {
        let mut n = 0;
        let mut count = |t: &Term| {
            if let Term::Marker(i) = t {
                n = n.max(i + 1);
            }
        };
        let using = |u: &Using, count: &mut dyn FnMut(&Term)| {
            u.ttl.iter().chain(u.timestamp.iter()).for_each(count);
        };
        let conditions = |cs: &[Condition], count: &mut dyn FnMut(&Term)| {
            cs.iter().flat_map(|c| c.values.iter()).for_each(count);
        };
        match self {
            Statement::Insert {
                values, using: u, ..
            } => {
                values.iter().for_each(&mut count);
                using(u, &mut count);
            }
            Statement::Update {
                using: u,
                set,
                conditions: cs,
                ..
            } => {
                using(u, &mut count);
                set.iter().for_each(|(_, t)| count(t));
                conditions(cs, &mut count);
            }
            Statement::Delete {
                using: u,
                conditions: cs,
                ..
            } => {
                using(u, &mut count);
                conditions(cs, &mut count);
            }
            Statement::Select {
                conditions: cs,
                limit,
                ..
            } => {
                conditions(cs, &mut count);
                limit.iter().for_each(&mut count);
            }
            _ => {}
        }
        n
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Str(String),
    Number(String),
    Hex(Vec<u8>),
    Symbol(&'static str),
    Marker,
}

fn tokenize(cql: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = cql.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string literal".into()),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(Token::Str(s));
        } else if c == '"' {
            let start = i + 1;
            let end = (start..chars.len())
                .find(|&j| chars[j] == '"')
                .ok_or("unterminated quoted name")?;
            out.push(Token::Quoted(chars[start..end].iter().collect()));
            i = end + 1;
        } else if c == '0' && matches!(chars.get(i + 1), Some('x' | 'X')) {
            let start = i + 2;
            let mut end = start;
            while end < chars.len() && chars[end].is_ascii_hexdigit() {
                end += 1;
            }
            let hex: String = chars[start..end].iter().collect();
            out.push(Token::Hex(decode_hex(&hex)?));
            i = end;
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || chars[i] == '-' && matches!(chars[i - 1], 'e' | 'E')
                    || chars[i] == '-' && is_uuid_prefix(&chars[start..i]))
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            if text.len() == 36 && text.matches('-').count() == 4 {
                out.push(Token::Word(text));
            } else {
                out.push(Token::Number(text));
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric()
                    || chars[i] == '_'
                    || chars[i] == '-' && is_uuid_prefix(&chars[start..i]))
            {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else if c == '?' {
            out.push(Token::Marker);
            i += 1;
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let symbol = match two.as_str() {
                "<=" => Some("<="),
                ">=" => Some(">="),
                _ => None,
            };
            if let Some(s) = symbol {
                out.push(Token::Symbol(s));
                i += 2;
                continue;
            }
            let s = match c {
                '(' => "(",
                ')' => ")",
                ',' => ",",
                ';' => ";",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '.' => ".",
                '*' => "*",
                '[' => "[",
                ']' => "]",
                '{' => "{",
                '}' => "}",
                ':' => ":",
                other => return Err(format!("unexpected character '{other}'")),
            };
            out.push(Token::Symbol(s));
            i += 1;
        }
    }
    Ok(out)
}

/// Whether `chars` so far is the start of a UUID up to a `-` (8-4-4-4 hex digits).
fn is_uuid_prefix(chars: &[char]) -> bool {
    let s: String = chars.iter().collect();
    let groups: Vec<&str> = s.split('-').collect();
    let sizes = [8, 4, 4, 4];
    groups.len() <= sizes.len()
        && groups
            .iter()
            .zip(sizes)
            .all(|(g, size)| g.len() == size && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in 0x{hex}"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let bytes = decode_hex(&hex).ok()?;
    bytes.try_into().ok()
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    markers: usize,
}

/// Parses one statement (a trailing `;` is allowed).
pub fn parse(cql: &str) -> Result<Statement, String> {
    let mut p = Parser {
        tokens: tokenize(cql)?,
        at: 0,
        markers: 0,
    };
    let statement = p.statement()?;
    p.eat_symbol(";");
    if let Some(t) = p.peek() {
        return Err(format!("unexpected {t:?} after the statement"));
    }
    Ok(statement)
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Result<Token, String> {
        let t = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or("unexpected end of statement")?;
        self.at += 1;
        Ok(t)
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn eat_keyword(&mut self, word: &str) -> bool {
        let yes = self.is_keyword(word);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn keyword(&mut self, word: &str) -> Result<(), String> {
        if self.eat_keyword(word) {
            Ok(())
        } else {
            Err(format!("expected {word}, found {:?}", self.peek()))
        }
    }

    fn eat_symbol(&mut self, s: &str) -> bool {
        let yes = matches!(self.peek(), Some(Token::Symbol(x)) if *x == s);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn symbol(&mut self, s: &str) -> Result<(), String> {
        if self.eat_symbol(s) {
            Ok(())
        } else {
            Err(format!("expected '{s}', found {:?}", self.peek()))
        }
    }

    /// An identifier: unquoted names are case-insensitive (lowercased).
    fn name(&mut self) -> Result<String, String> {
        match self.next()? {
            Token::Word(w) => Ok(w.to_ascii_lowercase()),
            Token::Quoted(q) => Ok(q),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    fn if_not_exists(&mut self) -> Result<bool, String> {
        if self.eat_keyword("if") {
            self.keyword("not")?;
            self.keyword("exists")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn table_name(&mut self) -> Result<TableName, String> {
        let first = self.name()?;
        if self.eat_symbol(".") {
            Ok(TableName {
                keyspace: Some(first),
                table: self.name()?,
            })
        } else {
            Ok(TableName {
                keyspace: None,
                table: first,
            })
        }
    }

    fn statement(&mut self) -> Result<Statement, String> {
        let Some(Token::Word(first)) = self.peek().cloned() else {
            return Err(format!("expected a statement, found {:?}", self.peek()));
        };
        self.at += 1;
        match first.to_ascii_lowercase().as_str() {
            "create" => {
                if self.eat_keyword("keyspace") {
                    self.create_keyspace()
                } else if self.eat_keyword("table") || self.eat_keyword("columnfamily") {
                    self.create_table()
                } else {
                    Err("only CREATE KEYSPACE and CREATE TABLE are supported".into())
                }
            }
            "drop" => {
                let keyspace = if self.eat_keyword("keyspace") {
                    true
                } else {
                    self.keyword("table")?;
                    false
                };
                let if_exists = if self.eat_keyword("if") {
                    self.keyword("exists")?;
                    true
                } else {
                    false
                };
                if keyspace {
                    Ok(Statement::Drop {
                        table: None,
                        keyspace: Some(self.name()?),
                        if_exists,
                        truncate: false,
                    })
                } else {
                    Ok(Statement::Drop {
                        table: Some(self.table_name()?),
                        keyspace: None,
                        if_exists,
                        truncate: false,
                    })
                }
            }
            "truncate" => {
                self.eat_keyword("table");
                Ok(Statement::Drop {
                    table: Some(self.table_name()?),
                    keyspace: None,
                    if_exists: false,
                    truncate: true,
                })
            }
            "use" => Ok(Statement::Use(self.name()?)),
            "insert" => self.insert(),
            "update" => self.update(),
            "delete" => self.delete(),
            "select" => self.select(),
            other => Err(format!("unsupported statement '{other}'")),
        }
    }

    fn create_keyspace(&mut self) -> Result<Statement, String> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.name()?;
        let mut replication = Vec::new();
        if self.eat_keyword("with") {
            loop {
                let option = self.name()?;
                self.symbol("=")?;
                if option == "replication" {
                    let Literal::Map(pairs) = self.literal()? else {
                        return Err("replication must be a map".into());
                    };
                    for (k, v) in pairs {
                        replication.push((literal_text(&k), literal_text(&v)));
                    }
                } else {
                    self.literal()?;
                }
                if !self.eat_keyword("and") {
                    break;
                }
            }
        }
        Ok(Statement::CreateKeyspace {
            name,
            if_not_exists,
            replication,
        })
    }

    fn create_table(&mut self) -> Result<Statement, String> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.table_name()?;
        self.symbol("(")?;
        let mut columns = Vec::new();
        let mut partition_key = Vec::new();
        let mut clustering = Vec::new();
        loop {
            if self.eat_keyword("primary") {
                self.keyword("key")?;
                self.symbol("(")?;
                if self.eat_symbol("(") {
                    partition_key = self.name_list()?;
                    self.symbol(")")?;
                } else {
                    partition_key.push(self.name()?);
                }
                while self.eat_symbol(",") {
                    clustering.push(self.name()?);
                }
                self.symbol(")")?;
            } else {
                let column = self.name()?;
                let ty = self.type_text()?;
                if self.eat_keyword("primary") {
                    self.keyword("key")?;
                    partition_key = vec![column.clone()];
                }
                columns.push((column, CqlType::parse(&ty)?));
            }
            if !self.eat_symbol(",") {
                break;
            }
        }
        self.symbol(")")?;
        // Table options (WITH ...) are accepted and ignored.
        while self.peek().is_some() && !matches!(self.peek(), Some(Token::Symbol(";"))) {
            self.at += 1;
        }
        if partition_key.is_empty() {
            return Err(format!("table {} has no PRIMARY KEY", name.table));
        }
        for key in partition_key.iter().chain(&clustering) {
            if !columns.iter().any(|(c, _)| c == key) {
                return Err(format!("unknown key column '{key}' in the PRIMARY KEY"));
            }
        }
        Ok(Statement::CreateTable {
            name,
            if_not_exists,
            columns,
            partition_key,
            clustering,
        })
    }

    /// A type as text, including `<...>` parameters.
    fn type_text(&mut self) -> Result<String, String> {
        let mut text = self.name()?;
        if self.eat_symbol("<") {
            text.push('<');
            let mut depth = 1;
            while depth > 0 {
                match self.next()? {
                    Token::Symbol("<") => {
                        depth += 1;
                        text.push('<');
                    }
                    Token::Symbol(">") => {
                        depth -= 1;
                        text.push('>');
                    }
                    Token::Symbol(",") => text.push(','),
                    Token::Word(w) => text.push_str(&w.to_ascii_lowercase()),
                    other => return Err(format!("unexpected {other:?} in a type")),
                }
            }
        }
        Ok(text)
    }

    fn name_list(&mut self) -> Result<Vec<String>, String> {
        let mut names = vec![self.name()?];
        while self.eat_symbol(",") {
            names.push(self.name()?);
        }
        Ok(names)
    }

    fn term(&mut self) -> Result<Term, String> {
        if matches!(self.peek(), Some(Token::Marker)) {
            self.at += 1;
            self.markers += 1;
            return Ok(Term::Marker(self.markers - 1));
        }
        Ok(Term::Literal(self.literal()?))
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.next()? {
            Token::Str(s) => Ok(Literal::Str(s)),
            Token::Number(n) => Ok(Literal::Number(n)),
            Token::Hex(h) => Ok(Literal::Hex(h)),
            Token::Word(w) if w.eq_ignore_ascii_case("true") => Ok(Literal::Bool(true)),
            Token::Word(w) if w.eq_ignore_ascii_case("false") => Ok(Literal::Bool(false)),
            Token::Word(w) if w.eq_ignore_ascii_case("null") => Ok(Literal::Null),
            Token::Word(w) => parse_uuid(&w)
                .map(Literal::Uuid)
                .ok_or_else(|| format!("expected a value, found '{w}'")),
            Token::Symbol("[") => {
                let items = self.literal_items("]")?;
                Ok(Literal::Collection(items))
            }
            Token::Symbol("{") => {
                if self.eat_symbol("}") {
                    return Ok(Literal::Map(Vec::new()));
                }
                let first = self.literal()?;
                if self.eat_symbol(":") {
                    let mut pairs = vec![(first, self.literal()?)];
                    while self.eat_symbol(",") {
                        let k = self.literal()?;
                        self.symbol(":")?;
                        pairs.push((k, self.literal()?));
                    }
                    self.symbol("}")?;
                    Ok(Literal::Map(pairs))
                } else {
                    let mut items = vec![first];
                    while self.eat_symbol(",") {
                        items.push(self.literal()?);
                    }
                    self.symbol("}")?;
                    Ok(Literal::Collection(items))
                }
            }
            other => Err(format!("expected a value, found {other:?}")),
        }
    }

    fn literal_items(&mut self, close: &str) -> Result<Vec<Literal>, String> {
        let mut items = Vec::new();
        if self.eat_symbol(close) {
            return Ok(items);
        }
        loop {
            items.push(self.literal()?);
            if !self.eat_symbol(",") {
                break;
            }
        }
        self.symbol(close)?;
        Ok(items)
    }

    fn using(&mut self) -> Result<Using, String> {
        let mut using = Using::default();
        if self.eat_keyword("using") {
            loop {
                if self.eat_keyword("ttl") {
                    using.ttl = Some(self.term()?);
                } else {
                    self.keyword("timestamp")?;
                    using.timestamp = Some(self.term()?);
                }
                if !self.eat_keyword("and") {
                    break;
                }
            }
        }
        Ok(using)
    }

    fn insert(&mut self) -> Result<Statement, String> {
        self.keyword("into")?;
        let table = self.table_name()?;
        self.symbol("(")?;
        let columns = self.name_list()?;
        self.symbol(")")?;
        self.keyword("values")?;
        self.symbol("(")?;
        let mut values = vec![self.term()?];
        while self.eat_symbol(",") {
            values.push(self.term()?);
        }
        self.symbol(")")?;
        if columns.len() != values.len() {
            return Err(format!(
                "{} columns but {} values",
                columns.len(),
                values.len()
            ));
        }
        if self.eat_keyword("if") {
            self.keyword("not")?;
            self.keyword("exists")?;
        }
        let using = self.using()?;
        Ok(Statement::Insert {
            table,
            columns,
            values,
            using,
        })
    }

    fn update(&mut self) -> Result<Statement, String> {
        let table = self.table_name()?;
        let using = self.using()?;
        self.keyword("set")?;
        let mut set = Vec::new();
        loop {
            let column = self.name()?;
            self.symbol("=")?;
            set.push((column, self.term()?));
            if !self.eat_symbol(",") {
                break;
            }
        }
        let conditions = self.where_clause()?;
        Ok(Statement::Update {
            table,
            using,
            set,
            conditions,
        })
    }

    fn delete(&mut self) -> Result<Statement, String> {
        if !self.is_keyword("from") {
            return Err("only whole-row DELETE FROM is supported".into());
        }
        self.keyword("from")?;
        let table = self.table_name()?;
        let using = self.using()?;
        let conditions = self.where_clause()?;
        Ok(Statement::Delete {
            table,
            using,
            conditions,
        })
    }

    fn where_clause(&mut self) -> Result<Vec<Condition>, String> {
        let mut conditions = Vec::new();
        if !self.eat_keyword("where") {
            return Ok(conditions);
        }
        loop {
            let target = if self.eat_keyword("token") {
                self.symbol("(")?;
                let names = self.name_list()?;
                self.symbol(")")?;
                Target::Token(names)
            } else {
                Target::Column(self.name()?)
            };
            let op = match self.next()? {
                Token::Symbol("=") => CmpOp::Eq,
                Token::Symbol("<") => CmpOp::Lt,
                Token::Symbol("<=") => CmpOp::Le,
                Token::Symbol(">") => CmpOp::Gt,
                Token::Symbol(">=") => CmpOp::Ge,
                Token::Word(w) if w.eq_ignore_ascii_case("in") => CmpOp::In,
                other => return Err(format!("expected a comparison, found {other:?}")),
            };
            let values = if op == CmpOp::In && self.eat_symbol("(") {
                let mut values = vec![self.term()?];
                while self.eat_symbol(",") {
                    values.push(self.term()?);
                }
                self.symbol(")")?;
                values
            } else if self.eat_keyword("token") {
                // token(?) on the right: the marker is the token itself.
                self.symbol("(")?;
                let t = self.term()?;
                self.symbol(")")?;
                vec![t]
            } else {
                vec![self.term()?]
            };
            conditions.push(Condition { target, op, values });
            if !self.eat_keyword("and") {
                break;
            }
        }
        Ok(conditions)
    }

    fn select(&mut self) -> Result<Statement, String> {
        self.eat_keyword("json");
        let selectors = if self.eat_symbol("*") {
            None
        } else {
            let mut selectors = Vec::new();
            loop {
                let name = self.name()?;
                let selector = if self.eat_symbol("(") {
                    let selector = match name.as_str() {
                        "token" => Selector::Token(self.name_list()?),
                        "writetime" => Selector::WriteTime(self.name()?),
                        "ttl" => Selector::Ttl(self.name()?),
                        "count" => {
                            if !self.eat_symbol("*") {
                                self.name()?;
                            }
                            Selector::Count
                        }
                        other => return Err(format!("unsupported function '{other}'")),
                    };
                    self.symbol(")")?;
                    selector
                } else {
                    Selector::Column(name)
                };
                if self.eat_keyword("as") {
                    self.name()?;
                }
                selectors.push(selector);
                if !self.eat_symbol(",") {
                    break;
                }
            }
            Some(selectors)
        };
        self.keyword("from")?;
        let table = self.table_name()?;
        let conditions = self.where_clause()?;
        let limit = if self.eat_keyword("limit") {
            Some(self.term()?)
        } else {
            None
        };
        if self.eat_keyword("allow") {
            self.keyword("filtering")?;
        }
        Ok(Statement::Select {
            table,
            selectors,
            conditions,
            limit,
        })
    }
}

fn literal_text(l: &Literal) -> String {
    match l {
        Literal::Str(s) | Literal::Number(s) => s.clone(),
        Literal::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_statements_the_sink_and_driver_send() {
        let s = parse(
            "CREATE TABLE IF NOT EXISTS metrics.device_temp (device text, window_start timestamp, \
             count bigint, mean double, PRIMARY KEY ((device), window_start)) WITH comment = 'x'",
        )
        .unwrap();
        let Statement::CreateTable {
            partition_key,
            clustering,
            columns,
            ..
        } = s
        else {
            panic!("{s:?}")
        };
        assert_eq!(partition_key, ["device"]);
        assert_eq!(clustering, ["window_start"]);
        assert_eq!(columns.len(), 4);

        let s = parse("INSERT INTO ks.t (a, b) VALUES (?, ?) USING TTL ? AND TIMESTAMP ?").unwrap();
        assert_eq!(s.markers(), 4);

        let s = parse(
            "SELECT keyspace_name, table_name FROM system_schema.tables where keyspace_name in ?",
        )
        .unwrap();
        let Statement::Select { conditions, .. } = &s else {
            panic!("{s:?}")
        };
        assert_eq!(conditions[0].op, CmpOp::In);
        assert_eq!(s.markers(), 1);

        let s = parse("SELECT host_id FROM system.local WHERE key='local'").unwrap();
        let Statement::Select { conditions, .. } = &s else {
            panic!("{s:?}")
        };
        assert_eq!(
            conditions[0].values,
            [Term::Literal(Literal::Str("local".into()))]
        );

        let s = parse("SELECT token(a), writetime(b) FROM t WHERE token(a) > ? LIMIT 10").unwrap();
        assert_eq!(s.markers(), 1);

        let s = parse(
            "CREATE KEYSPACE IF NOT EXISTS m WITH replication = {'class': 'SimpleStrategy', \
             'replication_factor': 1} AND durable_writes = true",
        )
        .unwrap();
        let Statement::CreateKeyspace { replication, .. } = s else {
            panic!()
        };
        assert_eq!(replication[1], ("replication_factor".into(), "1".into()));

        let s = parse("UPDATE t USING TIMESTAMP 5 SET v = 'it''s' WHERE k = -3.5e2").unwrap();
        assert!(matches!(s, Statement::Update { .. }));
    }

    #[test]
    fn errors_say_what_was_expected() {
        let e = parse("SELECT FROM t").unwrap_err();
        assert!(e.contains("expected"), "{e}");
        assert!(parse("INSERT INTO t (a, b) VALUES (1)")
            .unwrap_err()
            .contains("2 columns but 1 values"));
    }
}
