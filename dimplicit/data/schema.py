"""Column layouts of the supported CSV formats (NSL-KDD, HTRU2).

One source of truth for the ingest code and the synthetic traffic generator, so that a
synthetic log and a real NSL-KDD file produce identical feature layouts.
"""

NSLKDD_COLUMNS = [
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land",
    "wrong_fragment", "urgent", "hot", "num_failed_logins", "logged_in", "num_compromised",
    "root_shell", "su_attempted", "num_root", "num_file_creations", "num_shells",
    "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login", "count",
    "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate",
    "same_srv_rate", "diff_srv_rate", "srv_diff_host_rate", "dst_host_count",
    "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate",
    "label", "difficulty",
]  # fmt: skip
NSLKDD_LABEL = "label"
NSLKDD_IGNORE = ("difficulty",)  # not a feature: how many reference classifiers got it right
NSLKDD_NORMAL = "normal"

# Vocabularies of KDDTrain+ (which covers every value of the test files).  Ingest appends an
# explicit "<unknown>" slot to each, so unseen values at scoring time never crash or misalign.
NSLKDD_CATEGORIES = {
    "protocol_type": ["icmp", "tcp", "udp"],
    "service": [
        "IRC", "X11", "Z39_50", "aol", "auth", "bgp", "courier", "csnet_ns", "ctf", "daytime",
        "discard", "domain", "domain_u", "echo", "eco_i", "ecr_i", "efs", "exec", "finger",
        "ftp", "ftp_data", "gopher", "harvest", "hostnames", "http", "http_2784", "http_443",
        "http_8001", "imap4", "iso_tsap", "klogin", "kshell", "ldap", "link", "login", "mtp",
        "name", "netbios_dgm", "netbios_ns", "netbios_ssn", "netstat", "nnsp", "nntp", "ntp_u",
        "other", "pm_dump", "pop_2", "pop_3", "printer", "private", "red_i", "remote_job", "rje",
        "shell", "smtp", "sql_net", "ssh", "sunrpc", "supdup", "systat", "telnet", "tftp_u",
        "tim_i", "time", "urh_i", "urp_i", "uucp", "uucp_path", "vmnet", "whois",
    ],
    "flag": ["OTH", "REJ", "RSTO", "RSTOS0", "RSTR", "S0", "S1", "S2", "S3", "SF", "SH"],
}  # fmt: skip

# The usual 4-category mapping (DoS/Probe/R2L/U2R); httptunnel -> R2L and worm -> DoS,
# as in shared/data/README.md.
NSLKDD_ATTACK_CATEGORY = {
    **dict.fromkeys(["back", "land", "neptune", "pod", "smurf", "teardrop", "apache2",
                     "mailbomb", "processtable", "udpstorm", "worm"], "DoS"),
    **dict.fromkeys(["ipsweep", "nmap", "portsweep", "satan", "mscan", "saint"], "Probe"),
    **dict.fromkeys(["ftp_write", "guess_passwd", "imap", "multihop", "phf", "spy",
                     "warezclient", "warezmaster", "httptunnel", "named", "sendmail",
                     "snmpgetattack", "snmpguess", "xlock", "xsnoop"], "R2L"),
    **dict.fromkeys(["buffer_overflow", "loadmodule", "perl", "rootkit", "ps", "sqlattack",
                     "xterm"], "U2R"),
}  # fmt: skip

HTRU2_COLUMNS = [
    "profile_mean", "profile_stdev", "profile_excess_kurtosis", "profile_skewness",
    "dmsnr_mean", "dmsnr_stdev", "dmsnr_excess_kurtosis", "dmsnr_skewness", "class",
]  # fmt: skip
HTRU2_LABEL = "class"

UNKNOWN = "<unknown>"
