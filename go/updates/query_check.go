package updates

import "strings"

// singleSelect reports whether q is exactly one statement whose first keyword
// is SELECT or WITH, and returns that statement without its ';' and without
// trailing comments (so it can be wrapped in SELECT COUNT(*) FROM (...)).
// It is a tokenizer, not a parser: it only needs to know where quotes and
// comments are so a ';' or keyword inside them is not mistaken for SQL. The
// read-only connection, not this check, is what keeps the data safe.
func singleSelect(q string) (string, bool) {
	var (
		first   string // first token, upper-cased if a word
		lastEnd int    // end of the last token before the ';'
		ended   bool   // a ';' has been seen
	)
	token := func(start, end int) bool {
		if ended {
			return false // something after the ';': a second statement
		}
		if first == "" && start < end {
			first = strings.ToUpper(q[start:end])
		}
		lastEnd = end
		return true
	}
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			if j := strings.IndexByte(q[i:], '\n'); j >= 0 {
				i += j + 1
			} else {
				i = len(q)
			}
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			if j := strings.Index(q[i+2:], "*/"); j >= 0 {
				i += 2 + j + 2
			} else {
				i = len(q) // SQLite lets a block comment run to the end
			}
		case c == ';':
			if ended {
				return "", false // ";;" is a second (empty) statement
			}
			ended = true
			i++
		case c == '\'' || c == '"' || c == '`' || c == '[':
			end := skipQuoted(q, i)
			if !token(i, end) {
				return "", false
			}
			i = end
		case isWordByte(c):
			j := i
			for j < len(q) && isWordByte(q[j]) {
				j++
			}
			if !token(i, j) {
				return "", false
			}
			i = j
		default: // operators, parentheses, punctuation
			if !token(i, i+1) {
				return "", false
			}
			i++
		}
	}
	if first != "SELECT" && first != "WITH" {
		return "", false
	}
	return q[:lastEnd], true
}

// skipQuoted returns the index just past the quoted token starting at i. A
// doubled closing quote is an escaped quote; [...] has no escapes. An
// unterminated token runs to the end (SQLite then reports the error).
func skipQuoted(q string, i int) int {
	closer := q[i]
	if closer == '[' {
		closer = ']'
	}
	for j := i + 1; j < len(q); j++ {
		if q[j] != closer {
			continue
		}
		if closer != ']' && j+1 < len(q) && q[j+1] == closer {
			j++ // escaped quote
			continue
		}
		return j + 1
	}
	return len(q)
}

func isWordByte(c byte) bool {
	return c == '_' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}
