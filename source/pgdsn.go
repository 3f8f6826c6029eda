package source

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// pgConn is a parsed PostgreSQL connection string: libpq's parameters in
// the order given. The password is kept apart so that it reaches the
// tools only through PGPASSWORD, never their arguments.
type pgConn struct {
	keys     []string
	vals     map[string]string
	password string
}

// parsePgDSN parses a postgres:// (or postgresql://) URL or a libpq
// key=value string.
func parsePgDSN(dsn string) (*pgConn, error) {
	c := &pgConn{vals: map[string]string{}}
	var err error
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		err = c.parseURL(dsn)
	} else {
		err = c.parseKeywords(dsn)
	}
	if err != nil {
		return nil, fmt.Errorf("parse postgres DSN: %w", err)
	}
	if p, ok := c.vals["password"]; ok {
		c.password = p
		c.del("password")
	}
	return c, nil
}

func (c *pgConn) get(key string) string { return c.vals[key] }

func (c *pgConn) set(key, val string) {
	if _, ok := c.vals[key]; !ok {
		c.keys = append(c.keys, key)
	}
	c.vals[key] = val
}

func (c *pgConn) del(key string) {
	if _, ok := c.vals[key]; !ok {
		return
	}
	delete(c.vals, key)
	for i, k := range c.keys {
		if k == key {
			c.keys = append(c.keys[:i:i], c.keys[i+1:]...)
			break
		}
	}
}

// withDB returns a copy of c connecting to database db.
func (c *pgConn) withDB(db string) *pgConn {
	n := &pgConn{keys: append([]string(nil), c.keys...), vals: map[string]string{}, password: c.password}
	for k, v := range c.vals {
		n.vals[k] = v
	}
	n.set("dbname", db)
	return n
}

// connString returns c as a key=value string without the password, for
// --dbname.
func (c *pgConn) connString() string {
	var b strings.Builder
	for _, k := range c.keys {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		v := strings.ReplaceAll(c.vals[k], `\`, `\\`)
		v = strings.ReplaceAll(v, `'`, `\'`)
		fmt.Fprintf(&b, "%s='%s'", k, v)
	}
	return b.String()
}

// args returns the tool arguments that select the connection.
func (c *pgConn) args() []string {
	// --no-password: a tool must fail rather than wait for a prompt
	// on a terminal nobody watches.
	args := []string{"--no-password"}
	if cs := c.connString(); cs != "" {
		args = append(args, "--dbname="+cs)
	}
	return args
}

// env returns the environment that carries the password.
func (c *pgConn) env() []string {
	if c.password == "" {
		return nil
	}
	return []string{"PGPASSWORD=" + c.password}
}

// parseURL parses postgres://[user[:password]@][host[:port][,...]][/dbname][?param=value&...].
func (c *pgConn) parseURL(dsn string) error {
	_, rest, _ := strings.Cut(dsn, "://")
	rest, query, _ := strings.Cut(rest, "?")
	authority, path, _ := strings.Cut(rest, "/")
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo := authority[:i]
		authority = authority[i+1:]
		user, pass, hasPass := strings.Cut(userinfo, ":")
		u, err := url.PathUnescape(user)
		if err != nil {
			return fmt.Errorf("user: %w", err)
		}
		if u != "" {
			c.set("user", u)
		}
		if hasPass {
			p, err := url.PathUnescape(pass)
			if err != nil {
				return errors.New("password: bad escape")
			}
			c.set("password", p)
		}
	}
	if authority != "" {
		var hosts, ports []string
		anyPort := false
		for _, hp := range strings.Split(authority, ",") {
			host, port := hp, ""
			if strings.HasPrefix(hp, "[") {
				end := strings.Index(hp, "]")
				if end < 0 {
					return fmt.Errorf("host %q: missing ]", hp)
				}
				host = hp[1:end]
				port = strings.TrimPrefix(hp[end+1:], ":")
			} else if i := strings.LastIndex(hp, ":"); i >= 0 {
				host, port = hp[:i], hp[i+1:]
			}
			h, err := url.PathUnescape(host)
			if err != nil {
				return fmt.Errorf("host %q: %w", host, err)
			}
			hosts = append(hosts, h)
			ports = append(ports, port)
			anyPort = anyPort || port != ""
		}
		if strings.Join(hosts, "") != "" {
			c.set("host", strings.Join(hosts, ","))
		}
		if anyPort {
			c.set("port", strings.Join(ports, ","))
		}
	}
	if path != "" {
		db, err := url.PathUnescape(path)
		if err != nil {
			return fmt.Errorf("database name: %w", err)
		}
		c.set("dbname", db)
	}
	if query != "" {
		q, err := url.ParseQuery(query)
		if err != nil {
			return fmt.Errorf("parameters: %w", err)
		}
		keys := make([]string, 0, len(q))
		for k := range q {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			c.set(k, q.Get(k))
		}
	}
	return nil
}

// parseKeywords parses "key=value key2='quoted value'".
func (c *pgConn) parseKeywords(s string) error {
	i := 0
	skipSpace := func() {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
	}
	for {
		skipSpace()
		if i >= len(s) {
			return nil
		}
		start := i
		for i < len(s) && s[i] != '=' && !isSpace(s[i]) {
			i++
		}
		key := s[start:i]
		skipSpace()
		// The offset, not the text: a malformed string may hold a password.
		if key == "" || i >= len(s) || s[i] != '=' {
			return fmt.Errorf("expected key=value at offset %d", start)
		}
		i++
		skipSpace()
		var val strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				ch := s[i]
				i++
				if ch == '\\' && i < len(s) {
					val.WriteByte(s[i])
					i++
					continue
				}
				if ch == '\'' {
					closed = true
					break
				}
				val.WriteByte(ch)
			}
			if !closed {
				return fmt.Errorf("unterminated quoted value of %q", key)
			}
		} else {
			for i < len(s) && !isSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
				i++
			}
		}
		c.set(key, val.String())
	}
}

func isSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\f' || b == '\v'
}
