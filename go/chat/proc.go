package chat

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// procStat is what /proc says about this process at one moment.
type procStat struct {
	cpuSeconds float64 // user + system time
	ageSeconds float64 // since the process started
	rssBytes   float64
}

// readProc reads /proc/self/stat, /proc/self/statm and /proc/uptime: the
// kernel's own accounting, the same files Python's implementation reads.
func readProc() (procStat, error) {
	var p procStat
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return p, err
	}
	// The command name (field 2) may hold spaces and parentheses; the
	// numeric fields start after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return p, fmt.Errorf("/proc/self/stat: unexpected format")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return p, fmt.Errorf("/proc/self/stat: unexpected format")
	}
	// f[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	start, err3 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return p, fmt.Errorf("/proc/self/stat: unexpected format")
	}
	hz := float64(clockTicks())
	p.cpuSeconds = float64(utime+stime) / hz

	up, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return p, err
	}
	upf := strings.Fields(string(up))
	if len(upf) == 0 {
		return p, fmt.Errorf("/proc/uptime: unexpected format")
	}
	uptime, err := strconv.ParseFloat(upf[0], 64)
	if err != nil {
		return p, fmt.Errorf("/proc/uptime: %w", err)
	}
	p.ageSeconds = uptime - float64(start)/hz

	statm, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return p, err
	}
	m := strings.Fields(string(statm))
	if len(m) < 2 {
		return p, fmt.Errorf("/proc/self/statm: unexpected format")
	}
	pages, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil {
		return p, fmt.Errorf("/proc/self/statm: %w", err)
	}
	p.rssBytes = float64(pages) * float64(os.Getpagesize())
	return p, nil
}

var clockTicks = sync.OnceValue(func() uint64 {
	// /proc/self/auxv carries AT_CLKTCK (17), the kernel's USER_HZ, which
	// sysconf(_SC_CLK_TCK) would report; without cgo this is how to read it.
	const atClkTck = 17
	if auxv, err := os.ReadFile("/proc/self/auxv"); err == nil {
		for i := 0; i+16 <= len(auxv); i += 16 {
			tag := binary.NativeEndian.Uint64(auxv[i:])
			val := binary.NativeEndian.Uint64(auxv[i+8:])
			if tag == atClkTck && val > 0 {
				return val
			}
			if tag == 0 {
				break
			}
		}
	}
	return 100 // USER_HZ on every mainstream Linux build
})
