"""The outcome database's schema: its migrations and insert statements (pure data; see store.py)."""

from __future__ import annotations

# Migration N takes a database at user_version N-1 to N. Never edit a shipped migration.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: decisions and feedback
        """CREATE TABLE outcomes (
            request_id TEXT PRIMARY KEY, ts REAL NOT NULL, path TEXT NOT NULL, label TEXT NOT NULL,
            confidence REAL NOT NULL, text_sha256 TEXT NOT NULL, text TEXT, models TEXT NOT NULL,
            total_us REAL, provenance BLOB NOT NULL)""",
        "CREATE INDEX outcomes_ts ON outcomes(ts)",
        "CREATE TABLE feedback (request_id TEXT PRIMARY KEY, label TEXT NOT NULL, ts REAL NOT NULL)",
    ),
    (  # 2: population governance
        """CREATE TABLE shadow (
            request_id TEXT NOT NULL, capability TEXT NOT NULL, champion TEXT NOT NULL,
            challenger TEXT NOT NULL, champion_label TEXT NOT NULL, challenger_label TEXT NOT NULL,
            champion_us REAL, challenger_us REAL, ts REAL NOT NULL,
            PRIMARY KEY (request_id, capability, challenger))""",
        "CREATE INDEX shadow_cap ON shadow(capability, challenger)",
        """CREATE TABLE challengers (
            capability TEXT NOT NULL, version TEXT NOT NULL, status TEXT NOT NULL, folder TEXT NOT NULL,
            lineage TEXT NOT NULL, registered_ts REAL NOT NULL, decided_ts REAL,
            PRIMARY KEY (capability, version))""",
        """CREATE TABLE proposals (
            id INTEGER PRIMARY KEY, ts REAL NOT NULL, capability TEXT NOT NULL, kind TEXT NOT NULL,
            version TEXT NOT NULL, reason TEXT NOT NULL, evidence TEXT NOT NULL, status TEXT NOT NULL,
            decided_by TEXT, decided_ts REAL)""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY, ts REAL NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
            capability TEXT NOT NULL, from_version TEXT, to_version TEXT, why TEXT NOT NULL,
            manifest_before TEXT, manifest_after TEXT)""",
        """CREATE TABLE archive (
            capability TEXT NOT NULL, version TEXT NOT NULL, entry TEXT NOT NULL, files TEXT NOT NULL,
            bytes INTEGER NOT NULL, parent TEXT, data_fingerprint TEXT, metrics TEXT NOT NULL,
            was_champion INTEGER NOT NULL, diversity REAL, archived_ts REAL NOT NULL, evicted INTEGER NOT NULL,
            PRIMARY KEY (capability, version))""",
    ),
    (  # 3: proposals remember their champion; audit entries are write-ahead intents; shadow errors
        "ALTER TABLE proposals ADD COLUMN champion_version TEXT",
        "ALTER TABLE proposals ADD COLUMN champion_sha256 TEXT",
        "ALTER TABLE proposals ADD COLUMN manifest_sha256 TEXT",
        "ALTER TABLE audit ADD COLUMN state TEXT NOT NULL DEFAULT 'done'",
        "ALTER TABLE audit ADD COLUMN proposal_id INTEGER",
        """CREATE TABLE shadow_errors (
            capability TEXT NOT NULL, challenger TEXT NOT NULL, count INTEGER NOT NULL, last_error TEXT NOT NULL,
            last_ts REAL NOT NULL, PRIMARY KEY (capability, challenger))""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_INSERT = {
    "outcome": "INSERT OR REPLACE INTO outcomes VALUES (?,?,?,?,?,?,?,?,?,?)",
    # feedback only for a recorded outcome (an orphan label would escape retention); last one wins
    "feedback": "INSERT OR REPLACE INTO feedback SELECT ?1, ?2, ?3 WHERE EXISTS "
                "(SELECT 1 FROM outcomes WHERE request_id = ?1)",
    "shadow_error": "INSERT INTO shadow_errors VALUES (?1,?2,1,?3,?4) ON CONFLICT (capability, challenger) "
                    "DO UPDATE SET count = count + 1, last_error = ?3, last_ts = ?4",
    "shadow": "INSERT OR REPLACE INTO shadow VALUES (?,?,?,?,?,?,?,?,?)",
}
