package updates

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// formatValue renders a column value as the contract's text: integers in
// decimal, NULL as "", REAL as Python's repr, so both servers print the same.
func formatValue(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		return formatReal(x)
	case string:
		return x
	case []byte:
		return string(x)
	case bool:
		if x {
			return "1"
		}
		return "0"
	case time.Time:
		return x.Format(time.RFC3339Nano)
	default:
		return ""
	}
}

// formatReal is Python's repr(float): the shortest text that round-trips,
// exponent form when the decimal exponent is below -4 or at least 16,
// otherwise positional with ".0" for integral values.
func formatReal(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // e.g. "1.5e+16", "1e-05": Python's exponent form
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -4 || exp >= 16 {
		return e
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsRune(s, '.') {
		s += ".0"
	}
	return s
}
