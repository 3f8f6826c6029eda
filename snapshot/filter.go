package snapshot

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Path patterns for backup --exclude/--iexclude/--exclude-file and restore
// --include/--exclude, with restic's rules:
//
//   - a path is split into elements at "/"; "*", "?" and "[...]" work as in
//     path.Match within one element, and an element "**" matches any number
//     of elements, none included;
//   - a pattern starting with "/" is anchored at the root; any other pattern
//     is matched as if it started with "**/", so "*.tmp" and "foo/bar" match
//     at any depth;
//   - a pattern that matches a directory matches everything below it, so a
//     match against any leading part of a path is a match of the path;
//   - a trailing "/" restricts the pattern to directories;
//   - a leading "!" negates the pattern, and in a list the last pattern that
//     matches decides.
//
// Names are byte strings. Matching goes character by character over valid
// UTF-8 and byte by byte elsewhere, so that two different invalid bytes
// never compare equal (path.Match would see both as U+FFFD).

// Patterns is a compiled list of patterns. The zero value and nil are empty
// lists that match nothing. It is safe for concurrent use.
type Patterns struct {
	list []pattern
	fold bool
}

type pattern struct {
	elems   []element
	negate  bool
	dirOnly bool
}

// ParsePatterns compiles pats in order. Empty strings are skipped, as in
// restic. With caseInsensitive, letters match regardless of case (simple
// Unicode case folding; bytes that are not UTF-8 still match only
// themselves).
func ParsePatterns(pats []string, caseInsensitive bool) (*Patterns, error) {
	p := &Patterns{fold: caseInsensitive}
	for _, s := range pats {
		if s == "" {
			continue
		}
		pat, err := parsePattern(s, caseInsensitive)
		if err != nil {
			return nil, fmt.Errorf("invalid pattern %q: %w", s, err)
		}
		p.list = append(p.list, pat)
	}
	return p, nil
}

// Empty reports whether there are no patterns.
func (p *Patterns) Empty() bool { return p == nil || len(p.list) == 0 }

// Match reports whether path (a directory if isDir) matches the list: the
// last pattern that matches it decides, and a negated one means no match.
func (p *Patterns) Match(path string, isDir bool) bool {
	if p == nil {
		return false
	}
	for i := len(p.list) - 1; i >= 0; i-- {
		pat := &p.list[i]
		if m, _ := pat.scan(path, isDir, p.fold); m {
			return !pat.negate
		}
	}
	return false
}

// ChildMayMatch reports whether some path below directory dirPath could
// match the list. It may answer true when no child can match, never the
// reverse, so a false answer lets a walk skip the directory.
func (p *Patterns) ChildMayMatch(dirPath string) bool {
	if p == nil {
		return false
	}
	may := false
	for i := range p.list {
		pat := &p.list[i]
		m, alive := pat.scan(dirPath, true, p.fold)
		switch {
		case pat.negate && m:
			// The directory matches, so every path below it does too.
			may = false
		case !pat.negate && (m || alive):
			may = true
		}
	}
	return may
}

// ReadPatternFile reads an --exclude-file: one pattern per line, surrounding
// whitespace trimmed, empty lines and lines starting with "#" skipped, and
// $VAR or ${VAR} replaced from the environment, as restic does.
func ReadPatternFile(name string) ([]string, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read pattern file: %w", err)
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // editors on Windows add a BOM
	var pats []string
	for line := range strings.SplitSeq(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// An unset variable must not leave an empty pattern behind; it would
		// be skipped by ParsePatterns anyway.
		if line = os.ExpandEnv(line); line != "" {
			pats = append(pats, line)
		}
	}
	return pats, nil
}

func parsePattern(s string, fold bool) (pattern, error) {
	var p pattern
	if s[0] == '!' {
		p.negate = true
		s = s[1:]
		if s == "" {
			return p, fmt.Errorf("nothing after %q", "!")
		}
	}
	anchored := s[0] == '/'
	p.dirOnly = len(s) > 1 && s[len(s)-1] == '/'
	if !anchored {
		p.elems = append(p.elems, element{doubleStar: true})
	}
	s = strings.TrimPrefix(path.Clean(s), "/")
	if s == "" { // the pattern "/" matches the root, hence everything
		return p, nil
	}
	for part := range strings.SplitSeq(s, "/") {
		if part == "**" {
			if n := len(p.elems); n > 0 && p.elems[n-1].doubleStar {
				continue // "**/**" is "**"
			}
			p.elems = append(p.elems, element{doubleStar: true})
			continue
		}
		e, err := parseElement(part, fold)
		if err != nil {
			return p, err
		}
		p.elems = append(p.elems, e)
	}
	return p, nil
}

// scan runs the pattern over the elements of path. matched tells whether the
// pattern matches path or one of its parent directories; alive whether the
// pattern has matched all of path and still needs more elements, so that it
// may match something below path.
//
// The pattern is an automaton whose states are positions in elems: "**"
// stays on its position or skips it, any other element advances by one.
func (p *pattern) scan(path string, isDir, fold bool) (matched, alive bool) {
	n := len(p.elems)
	var bufA, bufB [4]uint64 // enough for 255 elements without allocating
	cur, next := stateSet(bufA[:]), stateSet(bufB[:])
	if w := n/64 + 1; w > len(bufA) {
		cur, next = make(stateSet, w), make(stateSet, w)
	} else {
		cur, next = cur[:w], next[:w]
	}
	cur.add(0)
	p.closure(cur)

	rest := strings.TrimRight(path, "/")
	// Accepting before any element means the root matched.
	if cur.has(n) && (rest != "" || isDir || !p.dirOnly) {
		return true, false
	}
	for rest != "" {
		var name string
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			name, rest = rest[:i], rest[i+1:]
		} else {
			name, rest = rest, ""
		}
		if name == "" {
			continue
		}
		clear(next)
		live := false
		for j := range n {
			if !cur.has(j) {
				continue
			}
			e := &p.elems[j]
			if e.doubleStar {
				next.add(j)
				live = true
			} else if e.match(name, fold) {
				next.add(j + 1)
				live = true
			}
		}
		if !live {
			return false, false
		}
		p.closure(next)
		cur, next = next, cur
		// A directory-only pattern may match a parent of path, which is a
		// directory, or path itself when it is one.
		if cur.has(n) && (rest != "" || isDir || !p.dirOnly) {
			return true, false
		}
	}
	for j := range n {
		if cur.has(j) {
			return false, true
		}
	}
	return false, false
}

// closure adds the position after every reachable "**", which may match
// no element at all.
func (p *pattern) closure(s stateSet) {
	for j, e := range p.elems {
		if e.doubleStar && s.has(j) {
			s.add(j + 1)
		}
	}
}

type stateSet []uint64

func (s stateSet) add(i int)      { s[i/64] |= 1 << (i % 64) }
func (s stateSet) has(i int) bool { return s[i/64]&(1<<(i%64)) != 0 }

// element is one compiled path element of a pattern.
type element struct {
	doubleStar bool
	literal    bool // no wildcards and case-sensitive: compare with lit
	lit        string
	toks       []token
}

type tokenKind uint8

const (
	tokChar  tokenKind = iota // one character, r
	tokAny                    // "?"
	tokStar                   // "*"
	tokClass                  // "[...]"
)

type token struct {
	kind  tokenKind
	r     rune // tokChar, case-folded when matching ignores case
	class *charClass
}

type charClass struct {
	negate bool
	ranges [][2]rune
}

func parseElement(s string, fold bool) (element, error) {
	if !fold && !strings.ContainsAny(s, `*?[\`) {
		return element{literal: true, lit: s}, nil
	}
	var e element
	for i := 0; i < len(s); {
		switch s[i] {
		case '*':
			if n := len(e.toks); n == 0 || e.toks[n-1].kind != tokStar {
				e.toks = append(e.toks, token{kind: tokStar})
			}
			i++
		case '?':
			e.toks = append(e.toks, token{kind: tokAny})
			i++
		case '[':
			c, next, err := parseClass(s, i+1)
			if err != nil {
				return e, err
			}
			e.toks = append(e.toks, token{kind: tokClass, class: c})
			i = next
		default:
			if s[i] == '\\' {
				i++
				if i == len(s) {
					return e, fmt.Errorf("%w: trailing backslash", path.ErrBadPattern)
				}
			}
			r, n := decodeChar(s[i:])
			if fold {
				r = foldRune(r)
			}
			e.toks = append(e.toks, token{kind: tokChar, r: r})
			i += n
		}
	}
	return e, nil
}

// parseClass parses a class whose "[" ends just before s[i], with the
// syntax of path.Match, and returns the index after its "]".
func parseClass(s string, i int) (*charClass, int, error) {
	c := &charClass{}
	if i < len(s) && s[i] == '^' {
		c.negate = true
		i++
	}
	for {
		if i < len(s) && s[i] == ']' && len(c.ranges) > 0 {
			return c, i + 1, nil
		}
		lo, next, err := classChar(s, i)
		if err != nil {
			return nil, 0, err
		}
		hi := lo
		if i = next; i < len(s) && s[i] == '-' {
			if hi, i, err = classChar(s, i+1); err != nil {
				return nil, 0, err
			}
		}
		c.ranges = append(c.ranges, [2]rune{lo, hi})
	}
}

func classChar(s string, i int) (rune, int, error) {
	if i >= len(s) {
		return 0, 0, fmt.Errorf("%w: unterminated [ class", path.ErrBadPattern)
	}
	if s[i] == '-' || s[i] == ']' {
		return 0, 0, fmt.Errorf("%w: unescaped %q in [ class", path.ErrBadPattern, s[i])
	}
	if s[i] == '\\' {
		if i++; i >= len(s) {
			return 0, 0, fmt.Errorf("%w: unterminated [ class", path.ErrBadPattern)
		}
	}
	r, n := decodeChar(s[i:])
	return r, i + n, nil
}

// match reports whether the element matches name. A "*" is retried only at
// the most recent star, which suffices for globs and keeps matching linear
// in practice.
func (e *element) match(name string, fold bool) bool {
	if e.literal {
		return name == e.lit
	}
	toks := e.toks
	i, j := 0, 0
	starJ, starI := -1, 0
	for i < len(name) || j < len(toks) {
		if j < len(toks) {
			t := &toks[j]
			if t.kind == tokStar {
				starJ, starI = j, i
				j++
				continue
			}
			if i < len(name) {
				r, n := decodeChar(name[i:])
				if t.matches(r, fold) {
					i += n
					j++
					continue
				}
			}
		}
		if starJ < 0 || starI >= len(name) {
			return false
		}
		_, n := decodeChar(name[starI:])
		starI += n
		i, j = starI, starJ+1
	}
	return true
}

func (t *token) matches(r rune, fold bool) bool {
	switch t.kind {
	case tokChar:
		if fold {
			r = foldRune(r)
		}
		return r == t.r
	case tokAny:
		return true
	case tokClass:
		if !fold {
			return t.class.contains(r)
		}
		// Any case variant of r in the class will do.
		for f := unicode.SimpleFold(r); ; f = unicode.SimpleFold(f) {
			if t.class.contains(f) {
				return true
			}
			if f == r {
				return false
			}
		}
	}
	return false
}

func (c *charClass) contains(r rune) bool {
	in := false
	for _, rg := range c.ranges {
		if rg[0] <= r && r <= rg[1] {
			in = true
			break
		}
	}
	return in != c.negate
}

// invalidBase maps a byte that is not part of valid UTF-8 to a value beyond
// every rune, so that it matches only itself (and byte ranges in classes).
const invalidBase = unicode.MaxRune + 1

// decodeChar returns the first character of a non-empty s and its length.
func decodeChar(s string) (rune, int) {
	if s[0] < utf8.RuneSelf {
		return rune(s[0]), 1
	}
	r, n := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && n == 1 {
		return invalidBase + rune(s[0]), 1
	}
	return r, n
}

// foldRune returns the smallest rune among r's simple case variants, one
// representative for all of them.
func foldRune(r rune) rune {
	if r < utf8.RuneSelf {
		if 'a' <= r && r <= 'z' {
			r -= 'a' - 'A'
		}
		return r
	}
	m := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		m = min(m, f)
	}
	return m
}
