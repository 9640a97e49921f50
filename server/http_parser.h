/* http_parser.h: placeholder, being written. */
#pragma once
