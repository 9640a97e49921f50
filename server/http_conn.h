/* http_conn.h: placeholder, being written. */
#pragma once
