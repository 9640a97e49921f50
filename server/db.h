/* db.h: placeholder, being written. */
#pragma once
